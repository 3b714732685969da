//! The same-machine backend (DistributedLock's `WaitHandles` and `FileSystem` backends in one).
//!
//! Every primitive is a lock file in a directory: by default a per-user runtime directory
//! (`$XDG_RUNTIME_DIR/tollgate`, else `/run/user/<uid>/tollgate`, else
//! `$TMPDIR/tollgate-<uid>`), or any directory you name (`file:///some/dir`), which makes this
//! the file-system backend too.
//!
//! - **Crash-safe without timers.** Holds are kernel locks owned by an open file description
//!   (`flock(2)` for locks, `F_OFD_SETLK` byte ranges for semaphores and reader-writer locks).
//!   When a holder exits, panics or is killed, the kernel drops its locks at once.
//! - **Event-driven hand-off.** Waiters watch the lock file with inotify, through one inotify
//!   instance per tokio runtime registered with that runtime's reactor; a release (unlock,
//!   then close) wakes the waiting runtime's thread at once, itself (waits therefore need a
//!   runtime with I/O enabled, as every backend's do; the [blocking API](crate::blocking)
//!   waits on tollgate's own). One recovery path polls, bounded: the kernel reports a
//!   dead process's close a moment before it drops that process's file locks, so after an
//!   event that did not lead to an acquire, a waiter checks again 1, 4, 16 and 64 ms later.
//!   Beyond that, a waiter that hears nothing re-checks once a second, which only matters
//!   where inotify cannot see other machines' changes (network file systems).
//! - **Never deletes lock files**: deleting on release lets two holders lock two different
//!   inodes of one path. If someone else deletes or replaces a file, an acquire notices (the
//!   path no longer names the locked inode) and locks the new file instead.
//! - Lock files get mode `0600` (`0660` with [`LocalProviderBuilder::group_access`]), and
//!   directories `0700` (`0770`).
//! - Locks interoperate with DistributedLock.FileSystem on the same directory: same file name
//!   for a name (see [`lock_file_name`]) and the same kernel lock (`flock`).
//!
//! Layout: locks at `DIR/<file name>`, semaphores at `DIR/semaphore/<file name>` and
//! reader-writer locks at `DIR/rw/<file name>`.

#[cfg(not(target_os = "linux"))]
compile_error!("tollgate's local backend needs Linux (open-file-description locks and inotify)");

mod builder;
mod name;
mod rwlock;
mod semaphore;
mod sys;
mod wait;
mod watch;

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use crate::{
    Acquire, Error, Handle, Lock, LockProvider, LossSignal, ReadWriteLock, ReadWriteLockProvider,
    Result, UpgradeableHandle, UpgradeableReadWriteLock, UpgradeableReadWriteLockProvider, Wait,
};

use builder::Config;
pub use builder::LocalProviderBuilder;
pub use name::file_name as lock_file_name;
pub use rwlock::{
    LocalReadWriteLock, LocalReader, LocalUpgradeableHandle, LocalUpgradeableReader, LocalWriter,
};
pub use semaphore::LocalSemaphore;
use sys::Range;
use wait::wait_for;

pub(crate) const BACKEND: &str = "local";
// Byte offsets of the reader-writer lock's ranges. A writer holds UPGRADE, then GATE (which
// turns away new readers: writer preference), then DATA exclusively; readers hold DATA shared.
const UPGRADE: u64 = 0;
const GATE: u64 = 1;
const DATA: u64 = 2;

fn io_error(what: impl std::fmt::Display, path: &Path, error: io::Error) -> Error {
    Error::backend(BACKEND, format!("{what} {}", path.display()), error)
}

/// The same-machine provider: creates locks, semaphores and reader-writer locks whose files
/// live in one directory. Cheap to clone.
#[derive(Clone, Debug)]
pub struct LocalProvider {
    config: Arc<Config>,
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Lock,
    Semaphore,
    ReadWrite,
}

impl LocalProvider {
    /// The directory holding the lock files.
    pub fn directory(&self) -> &Path {
        &self.config.directory
    }

    fn primitive(&self, kind: Kind, name: &str) -> Arc<Named> {
        Arc::new(Named {
            name: name.to_owned(),
            kind,
            path: self.config.path(kind, name),
            config: self.config.clone(),
        })
    }
}

#[derive(Debug)]
struct Named {
    name: String,
    kind: Kind,
    path: PathBuf,
    config: Arc<Config>,
}

/// A lock file with whatever this process holds on it. Dropping it unlocks before closing,
/// so that waiters woken by the close find the lock free.
#[derive(Debug)]
struct HeldFile {
    file: File,
    kind: Kind,
}

impl Drop for HeldFile {
    fn drop(&mut self) {
        // May fail with "nothing held"; the close releases everything regardless.
        let _ = match self.kind {
            Kind::Lock => sys::flock_unlock(&self.file),
            Kind::Semaphore | Kind::ReadWrite => {
                sys::try_range(&self.file, Range::Unlock, 0, 0).map(drop)
            }
        };
    }
}

/// What one step of an attempt on a lock file found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Progress {
    /// The attempt is complete: the primitive is held.
    Complete,
    /// Held elsewhere: wait for a change to the lock file.
    Busy,
    /// Another process is in the middle of a change of a few system calls that does not show
    /// as a change to the file: try again in a moment.
    Briefly,
}

impl From<bool> for Progress {
    fn from(complete: bool) -> Self {
        if complete {
            Progress::Complete
        } else {
            Progress::Busy
        }
    }
}

/// Why a step of an attempt on a lock file failed.
#[derive(Debug)]
enum StepError {
    /// A system call failed.
    Io(io::Error),
    /// The primitive refuses this caller (a semaphore in use with another max count).
    Refused(Error),
}

impl From<io::Error> for StepError {
    fn from(error: io::Error) -> Self {
        StepError::Io(error)
    }
}

impl Named {
    /// Acquires with `step`, which advances the attempt on the open lock file and reports
    /// whether it is complete; the file and the state stay across tries (a waiting writer
    /// keeps its place).
    async fn acquire<S: Default + Send>(
        &self,
        wait: Wait,
        mut step: impl FnMut(&File, &mut S) -> Result<Progress, StepError> + Send,
    ) -> Result<Option<(HeldFile, S)>> {
        let mut attempt: Option<(HeldFile, S)> = None;
        let mut done = None;
        wait_for(&self.path, wait, || {
            let progress = self.try_step(&mut attempt, &mut step)?;
            if progress == Progress::Complete {
                done = attempt.take();
            }
            Ok(progress)
        })
        .await?;
        Ok(done)
    }

    /// One try of `step`; when it completes, the attempt holds the primitive.
    fn try_step<S: Default>(
        &self,
        attempt: &mut Option<(HeldFile, S)>,
        step: &mut impl FnMut(&File, &mut S) -> Result<Progress, StepError>,
    ) -> Result<Progress> {
        // A replaced file is retried on the new one at once; twice in a row is a fluke, a
        // third time someone is deleting our files on purpose.
        for _ in 0..3 {
            let (held, state) = match attempt {
                Some(pair) => pair,
                None => attempt.insert((
                    HeldFile {
                        file: self.config.open(&self.path)?,
                        kind: self.kind,
                    },
                    S::default(),
                )),
            };
            let progress = step(&held.file, state).map_err(|error| match error {
                StepError::Io(error) => io_error("cannot lock", &self.path, error),
                StepError::Refused(error) => error,
            })?;
            if progress != Progress::Complete {
                return Ok(progress);
            }
            let current = sys::is_linked(&held.file)
                .map_err(|error| io_error("cannot inspect", &self.path, error))?;
            if current {
                return Ok(Progress::Complete);
            }
            *attempt = None;
        }
        Err(Error::backend(
            BACKEND,
            format!("lock file {} keeps being replaced", self.path.display()),
            io::Error::other("lock file replaced while locking"),
        ))
    }
}

/// A held local lock, semaphore ticket, or read or write hold. Dropping it releases at once
/// (two system calls, no blocking); the kernel releases it if the process dies.
#[derive(Debug)]
#[must_use = "dropping the handle releases it"]
pub struct LocalHandle {
    named: Arc<Named>,
    held: HeldFile,
    /// For exclusive holds: the token, drawn on first request.
    fencing: Option<OnceLock<Option<u64>>>,
}

impl Handle for LocalHandle {
    async fn release(self) -> Result<()> {
        drop(self);
        Ok(())
    }

    fn name(&self) -> &str {
        &self.named.name
    }

    /// Local holds are kernel-held and cannot be lost while the process lives.
    fn loss_signal(&self) -> LossSignal {
        LossSignal::undetectable()
    }

    /// Locks and write holds give tokens; semaphore tickets and read holds do not. The
    /// token is drawn from a counter in the lock file on the first call (so holders that never
    /// ask cost nothing), and is strictly greater than any token an earlier holder drew.
    /// `None` also if the counter cannot be written, which is logged.
    fn fencing_token(&self) -> Option<u64> {
        let cell = self.fencing.as_ref()?;
        *cell.get_or_init(|| match sys::next_fencing_token(&self.held.file) {
            Ok(token) => Some(token),
            Err(error) => {
                tracing::warn!(path = %self.named.path.display(), %error, "cannot draw a fencing token");
                None
            }
        })
    }
}

/// A same-machine mutex. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct LocalLock {
    named: Arc<Named>,
}

impl LocalLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.named.path
    }
}

impl Acquire for LocalLock {
    type Handle = LocalHandle;

    fn name(&self) -> &str {
        &self.named.name
    }

    /// Acquires the lock, waiting as `wait` says.
    ///
    /// # Cancel safety
    /// Cancel-safe: a dropped future closes its lock file, so nothing stays held.
    async fn acquire_wait(&self, wait: Wait) -> Result<Option<LocalHandle>> {
        let Some((held, ())) = self
            .named
            .acquire(wait, |file, ()| Ok(sys::try_flock_exclusive(file)?.into()))
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(LocalHandle {
            named: self.named.clone(),
            held,
            fencing: Some(OnceLock::new()),
        }))
    }
}

impl Lock for LocalLock {}

impl LockProvider for LocalProvider {
    type Lock = LocalLock;

    fn lock(&self, name: &str) -> Result<LocalLock> {
        Ok(LocalLock {
            named: self.primitive(Kind::Lock, name),
        })
    }
}
