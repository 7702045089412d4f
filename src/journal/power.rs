//! A simulated power cut, for tests: the file operations of the OS, except that
//! the simulation remembers what a real disk would hold if the power went out
//! now, and can write that disk image out at a chosen crash point.
//!
//! What is durable follows the POSIX rules the journal relies on, and no more:
//! - a file's bytes (including bytes written through a shared mapping, which
//!   never pass through [`Io`]) are durable as of its last `sync`; before its
//!   first one, nothing of it is;
//! - a directory entry (a create, a rename, a remove) is durable only after the
//!   directory's `sync_dir`;
//! - at the crash, every byte written since the last sync is, per 512-byte
//!   sector, either lost or kept ([`Fate`]): a write is torn at sector
//!   boundaries, never inside a sector.
//!
//! The crash point is the `n`-th operation through [`Io`]: the image is taken
//! as that operation starts, and it and every later one fail with `EIO`, as if
//! the machine had stopped. The engine under test then halts; the test drops it
//! and opens the image instead.

use super::io::{Io, OsIo};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// What a power cut does to the bytes written since a file was last synced.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Fate {
    /// Lost: the file is as of its last sync (empty if it was never synced).
    Dropped,
    /// Kept: everything reached the disk (what a process crash leaves).
    Kept,
    /// Torn: each unsynced 512-byte sector independently kept or lost, chosen by
    /// a generator seeded with the value given; a file never synced keeps its
    /// length with the lost sectors zero-filled (as ext4 leaves such a file).
    Torn(u64),
}

const SECTOR: usize = 512;

/// One file the simulation follows, by inode.
struct Tracked {
    /// A handle that keeps the inode readable after it is unlinked.
    handle: File,
    /// Its bytes as of its last sync; `None` before the first.
    durable: Option<Vec<u8>>,
}

/// A file as the crash found it.
struct Frozen {
    durable: Option<Vec<u8>>,
    current: Vec<u8>,
}

#[derive(Default)]
struct State {
    files: HashMap<u64, Tracked>,
    /// Durable directory entries: path to inode.
    names: BTreeMap<PathBuf, u64>,
    ops: u64,
    crash_at: Option<u64>,
    /// The disk at the crash: durable path to what the file held.
    frozen: Option<BTreeMap<PathBuf, Frozen>>,
}

/// The OS's file operations with a power cut simulated at operation `crash_at`
/// (see the module docs). For power-loss tests: run a scenario once without a
/// crash to count its operations ([`PowerLossIo::ops`]), then once per crash
/// point, writing each [`Fate`]'s image with [`PowerLossIo::image`] and opening it.
///
/// Syncs are simulated, not performed: a scenario runs at memory speed.
pub struct PowerLossIo {
    root: PathBuf,
    boot_id: Option<[u8; 16]>,
    state: Mutex<State>,
}

fn inode(file: &File) -> io::Result<u64> {
    Ok(file.metadata()?.ino())
}

fn read_all(file: &File) -> io::Result<Vec<u8>> {
    let len = file.metadata()?.len() as usize;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, 0)?;
    Ok(buf)
}

fn crashed() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

impl PowerLossIo {
    /// Follows every file under `root` (a database directory and its
    /// `journal/`), taking what is there now as durable. `crash_at`: the
    /// operation at which the power goes out (`None`: never).
    pub fn new(root: &Path, crash_at: Option<u64>) -> io::Result<PowerLossIo> {
        let mut st = State {
            crash_at,
            ..State::default()
        };
        for dir in [root.to_owned(), root.join("journal")] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries {
                let entry = entry?;
                if !entry.file_type()?.is_file() {
                    continue;
                }
                let handle = File::open(entry.path())?;
                let ino = inode(&handle)?;
                let durable = Some(read_all(&handle)?);
                st.names.insert(entry.path(), ino);
                st.files.insert(ino, Tracked { handle, durable });
            }
        }
        Ok(PowerLossIo {
            root: root.to_owned(),
            boot_id: Some([1; 16]),
            state: Mutex::new(st),
        })
    }

    /// The boot this simulated machine reports ([`Io::boot_id`]): a recovery
    /// after a power cut runs in a new boot, one after a process crash in the
    /// same one.
    pub fn with_boot_id(mut self, boot_id: Option<[u8; 16]>) -> PowerLossIo {
        self.boot_id = boot_id;
        self
    }

    /// Operations seen so far (the crash point counts as one).
    pub fn ops(&self) -> u64 {
        self.lock().ops
    }

    /// Whether the power has gone out.
    pub fn crashed(&self) -> bool {
        self.lock().frozen.is_some()
    }

    /// Writes the disk as the power cut left it into `dest` (created; it must not
    /// exist yet), with `fate(path)` deciding for each file what happened to its
    /// unsynced bytes. An error if the power has not gone out.
    pub fn image(&self, dest: &Path, fate: impl Fn(&Path) -> Fate) -> io::Result<()> {
        let st = self.lock();
        let Some(frozen) = &st.frozen else {
            return Err(io::Error::other("the power has not gone out"));
        };
        std::fs::create_dir(dest)?;
        std::fs::create_dir(dest.join("journal"))?;
        for (path, file) in frozen {
            let Ok(rel) = path.strip_prefix(&self.root) else {
                continue;
            };
            let bytes = survivor(file, fate(path));
            let to = dest.join(rel);
            // Files in subdirectories (`pitr/`, salvage copies) keep their place.
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(to, bytes)?;
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding it leaves consistent state: every
        // update is a single insert or assignment.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts an operation; at the crash point, freezes the disk. `Err` once the
    /// power is out.
    fn step(&self) -> io::Result<()> {
        let mut st = self.lock();
        if st.frozen.is_some() {
            return Err(crashed());
        }
        let n = st.ops;
        st.ops += 1;
        if st.crash_at != Some(n) {
            return Ok(());
        }
        let mut frozen = BTreeMap::new();
        for (path, ino) in &st.names {
            let t = &st.files[ino];
            frozen.insert(
                path.clone(),
                Frozen {
                    durable: t.durable.clone(),
                    current: read_all(&t.handle)?,
                },
            );
        }
        st.frozen = Some(frozen);
        Err(crashed())
    }

    fn track(&self, file: &File) -> io::Result<()> {
        let ino = inode(file)?;
        let mut st = self.lock();
        if let std::collections::hash_map::Entry::Vacant(slot) = st.files.entry(ino) {
            // A handle of our own that can read, whatever `file` was opened for.
            use std::os::fd::AsRawFd;
            let handle = File::open(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
            slot.insert(Tracked {
                handle,
                durable: None,
            });
        }
        Ok(())
    }
}

/// The bytes of one file after the cut.
fn survivor(file: &Frozen, fate: Fate) -> Vec<u8> {
    let current = &file.current;
    match (fate, &file.durable) {
        (Fate::Kept, _) => current.clone(),
        (Fate::Dropped, None) => Vec::new(),
        (Fate::Dropped, Some(d)) => d.clone(),
        (Fate::Torn(seed), durable) => {
            let mut rng = seed ^ 0x9e37_79b9_7f4a_7c15;
            let mut coin = || {
                // xorshift64*: deterministic per seed, no dependency.
                rng ^= rng >> 12;
                rng ^= rng << 25;
                rng ^= rng >> 27;
                rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 63 == 1
            };
            let old = durable.clone().unwrap_or_else(|| vec![0; current.len()]);
            let len = if coin() { current.len() } else { old.len() };
            let mut out = vec![0u8; len];
            for at in (0..len).step_by(SECTOR) {
                let end = (at + SECTOR).min(len);
                let new = current.get(at..end.min(current.len()));
                let was = old.get(at..end.min(old.len()));
                let pick = if coin() { new } else { was };
                if let Some(src) = pick.or(new).or(was) {
                    out[at..at + src.len()].copy_from_slice(src);
                }
            }
            out
        }
    }
}

impl Io for PowerLossIo {
    fn create(&self, path: &Path) -> io::Result<File> {
        self.step()?;
        let file = OsIo.create(path)?;
        self.track(&file)?;
        Ok(file)
    }
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        self.step()?;
        OsIo.create_dir(path)
    }
    fn allocate(&self, file: &File, len: u64) -> io::Result<()> {
        self.step()?;
        OsIo.allocate(file, len)
    }
    fn write_at(&self, file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
        self.step()?;
        OsIo.write_at(file, buf, offset)
    }
    fn sync(&self, file: &File) -> io::Result<()> {
        self.step()?;
        self.track(file)?;
        let ino = inode(file)?;
        let mut st = self.lock();
        if let Some(t) = st.files.get_mut(&ino) {
            t.durable = Some(read_all(&t.handle)?);
        }
        Ok(())
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.step()?;
        let mut st = self.lock();
        st.names.retain(|p, _| p.parent() != Some(dir));
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if !entry.file_type()?.is_file() {
                continue;
            }
            let ino = entry.metadata()?.ino();
            if st.files.contains_key(&ino) {
                st.names.insert(entry.path(), ino);
            }
        }
        Ok(())
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.step()?;
        OsIo.rename(from, to)
    }
    fn truncate(&self, file: &File, len: u64) -> io::Result<()> {
        self.step()?;
        OsIo.truncate(file, len)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.step()?;
        OsIo.remove(path)
    }
    fn boot_id(&self) -> Option<[u8; 16]> {
        self.boot_id
    }
}

impl std::fmt::Debug for PowerLossIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.lock();
        f.debug_struct("PowerLossIo")
            .field("root", &self.root)
            .field("ops", &st.ops)
            .field("crash_at", &st.crash_at)
            .field("crashed", &st.frozen.is_some())
            .finish()
    }
}
