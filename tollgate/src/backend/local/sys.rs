//! The kernel calls the local backend is built on: `flock(2)` for whole-file locks and
//! open-file-description (`F_OFD_*`) byte-range locks for semaphores and reader-writer locks.
//! Both belong to the open file description, so two handles in one process exclude each
//! other, and both are dropped by the kernel when the last descriptor closes, including when
//! the process dies.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Opens (creating if needed) a lock file for reading and writing, close-on-exec so that
/// commands run by the holder never inherit the lock.
pub fn open_lock_file(path: &Path, mode: libc::mode_t) -> io::Result<File> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: a valid NUL-terminated path and plain flags; the result is checked.
    let fd = unsafe {
        libc::open(
            c_path.as_ptr(),
            libc::O_RDWR | libc::O_CREAT | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            libc::c_uint::from(mode),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

fn is_busy(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EWOULDBLOCK | libc::EACCES))
}

/// `flock(LOCK_EX | LOCK_NB)`: `Ok(true)` when taken, `Ok(false)` when someone holds it.
pub fn try_flock_exclusive(file: &File) -> io::Result<bool> {
    // SAFETY: flock on an open descriptor.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
        return Ok(false);
    }
    Err(error)
}

/// `flock(LOCK_UN)`.
pub fn flock_unlock(file: &File) -> io::Result<()> {
    // SAFETY: flock on an open descriptor.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The kind of a byte-range lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Range {
    /// A shared (read) lock.
    Shared,
    /// An exclusive (write) lock.
    Exclusive,
    /// No lock: unlocks the range.
    Unlock,
}

fn flock_struct(kind: Range, start: u64, len: u64) -> libc::flock {
    // SAFETY: `flock` is plain data; all-zero is a valid value (l_pid must be 0 for OFD).
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = match kind {
        Range::Shared => libc::F_RDLCK,
        Range::Exclusive => libc::F_WRLCK,
        Range::Unlock => libc::F_UNLCK,
    } as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock.l_start = start as libc::off_t;
    lock.l_len = len as libc::off_t;
    lock
}

/// `F_OFD_SETLK` on `len` bytes at `start` (len 0: to the end of any file): `Ok(true)` when
/// set, `Ok(false)` when another open file description holds a conflicting lock. Setting a
/// lock over one this descriptor already holds converts it atomically, or leaves it as it
/// was when it conflicts.
pub fn try_range(file: &File, kind: Range, start: u64, len: u64) -> io::Result<bool> {
    let lock = flock_struct(kind, start, len);
    // SAFETY: fcntl with a valid `struct flock` pointer.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &lock) } == 0 {
        return Ok(true);
    }
    let error = io::Error::last_os_error();
    if is_busy(&error) {
        return Ok(false);
    }
    Err(error)
}

/// `F_OFD_GETLK`: whether another open file description holds a lock on any of the `len`
/// bytes at `start` that conflicts with a lock of `kind`.
pub fn range_conflicts(file: &File, kind: Range, start: u64, len: u64) -> io::Result<bool> {
    let mut lock = flock_struct(kind, start, len);
    // SAFETY: fcntl with a valid, writable `struct flock` pointer.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut lock) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(lock.l_type != libc::F_UNLCK as libc::c_short)
}

/// Touches the file's timestamps so that waiters watching it wake up (an inotify
/// `IN_ATTRIB` event). Used after unlocking part of a file without closing it.
pub fn poke(file: &File) -> io::Result<()> {
    let now = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
    ];
    // SAFETY: futimens with two valid timespecs.
    if unsafe { libc::futimens(file.as_raw_fd(), now.as_ptr()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether `file` is still linked into the directory. Someone may have deleted the lock
/// file, or renamed another over it, and a lock on an unlinked file excludes nobody who opens
/// the path afresh. Asks the kernel for the link count alone: cheaper than a full `stat`,
/// and it does not make the next write to the file update its timestamps on disk.
pub fn is_linked(file: &File) -> io::Result<bool> {
    // SAFETY: `statx` is plain data; all-zero is a valid value.
    let mut status: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: an empty path with AT_EMPTY_PATH names the descriptor itself; `status` is ours.
    let result = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_NLINK,
            &mut status,
        )
    };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(status.stx_nlink > 0)
}

/// Reads the 8-byte fencing counter at offset 0, adds one, writes it back and returns it.
/// Only the holder of the lock calls this, so the read-modify-write cannot race.
pub fn next_fencing_token(file: &File) -> io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let mut bytes = [0u8; 8];
    let read = file.read_at(&mut bytes, 0)?;
    let current = if read == 8 {
        u64::from_le_bytes(bytes)
    } else {
        0
    };
    let next = current.wrapping_add(1).max(1);
    file.write_all_at(&next.to_le_bytes(), 0)?;
    Ok(next)
}
