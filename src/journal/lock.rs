//! The directory lock: one writer per database, across processes and paths.
//!
//! `flock` on `dir/LOCK`, held for the engine's whole life. flock locks belong to
//! the open file description and the inode, so a second open in the same process,
//! through a symlink or by another path to the same directory, is refused just as
//! another process is (seed 001: two processes writing one mapped database).
//! Read-only opens take a shared lock: they exclude a writer, not each other.

use crate::error::{Error, Result};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Holds the lock until dropped (closing the file releases it).
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: File,
}

impl DirLock {
    pub(crate) fn acquire(dir: &Path, exclusive: bool) -> Result<DirLock> {
        let path = dir.join("LOCK");
        let io = |op: &'static str| {
            let path = path.clone();
            move |source| Error::Io { op, path, source }
        };
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            // Never block on a FIFO, never follow a link out of the directory.
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::ELOOP) {
                    Error::Corrupt {
                        path: path.clone(),
                        offset: 0,
                        commit_id: None,
                        reason: "not a regular file (a symbolic link)".to_owned(),
                    }
                } else {
                    io("open lock file")(e)
                }
            })?;
        if !file.metadata().map_err(io("stat"))?.file_type().is_file() {
            return Err(Error::Corrupt {
                path,
                offset: 0,
                commit_id: None,
                reason: "not a regular file".to_owned(),
            });
        }
        let how = if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        };
        // SAFETY: flock on a descriptor we own; LOCK_NB makes it return at once.
        if unsafe { libc::flock(file.as_raw_fd(), how | libc::LOCK_NB) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut text = String::new();
                let pid = file
                    .read_to_string(&mut text)
                    .ok()
                    .and_then(|_| text.trim().parse().ok());
                return Err(Error::Locked { path, pid });
            }
            return Err(io("flock")(err));
        }
        if exclusive {
            // Record the holder, for the next opener's error message.
            file.set_len(0).map_err(io("write lock file"))?;
            file.seek(SeekFrom::Start(0))
                .and_then(|_| writeln!(file, "{}", std::process::id()))
                .map_err(io("write lock file"))?;
        }
        Ok(DirLock { _file: file })
    }
}
