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
//! - **Event-driven hand-off.** Waiters watch the lock file with inotify; a release (unlock,
//!   then close) wakes them at once. One recovery path polls, bounded: the kernel reports a
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

mod name;
mod rwlock;
mod sys;
mod watch;

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::backend::kit;
use crate::backend::kit::options::UrlOptions;
use crate::backend::kit::wait::{Attempt, Contender, Schedule};
use crate::{
    check_max_count, Acquire, Error, Handle, Lock, LockProvider, LossSignal, ReadWriteLock,
    ReadWriteLockProvider, Result, Semaphore, SemaphoreProvider, UpgradeableHandle,
    UpgradeableReadWriteLock, UpgradeableReadWriteLockProvider, Wait,
};

pub use name::file_name as lock_file_name;
pub use rwlock::{
    LocalReadWriteLock, LocalReader, LocalUpgradeableHandle, LocalUpgradeableReader, LocalWriter,
};
use sys::Range;

pub(crate) const BACKEND: &str = "local";
/// Re-checks after an event that did not lead to an acquire (see the module docs).
const SETTLE_RECHECKS: [Duration; 4] = [
    Duration::from_millis(1),
    Duration::from_millis(4),
    Duration::from_millis(16),
    Duration::from_millis(64),
];
/// The re-check when nothing is heard, for file systems whose changes inotify cannot see.
const QUIET_RECHECK: Duration = Duration::from_secs(1);

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

#[derive(Debug)]
struct Config {
    directory: PathBuf,
    file_mode: libc::mode_t,
    directory_mode: u32,
}

/// Configures a [`LocalProvider`].
#[derive(Clone, Debug, Default)]
pub struct LocalProviderBuilder {
    directory: Option<PathBuf>,
    group_access: bool,
}

impl LocalProviderBuilder {
    /// Keeps lock files in `directory` (created if missing) instead of the per-user runtime
    /// directory.
    pub fn directory(mut self, directory: impl Into<PathBuf>) -> Self {
        self.directory = Some(directory.into());
        self
    }

    /// Lets the owning group use the lock files too (`0660` files, `0770` directories), for
    /// processes of several users that share a group and a directory.
    pub fn group_access(mut self, group_access: bool) -> Self {
        self.group_access = group_access;
        self
    }

    /// Creates the directory (and its `semaphore/` and `rw/` subdirectories) if needed.
    pub fn build(self) -> Result<LocalProvider> {
        let (file_mode, directory_mode) = if self.group_access {
            (0o660, 0o770)
        } else {
            (0o600, 0o700)
        };
        let directory = match self.directory {
            Some(directory) => directory,
            None => default_directory()?,
        };
        if directory.as_os_str().is_empty() {
            return Err(Error::invalid("the lock directory path is empty"));
        }
        let config = Config {
            directory,
            file_mode,
            directory_mode,
        };
        config.create_directories()?;
        Ok(LocalProvider {
            config: Arc::new(config),
        })
    }
}

fn default_directory() -> Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    if let Some(runtime) = std::env::var_os("XDG_RUNTIME_DIR").filter(|dir| !dir.is_empty()) {
        return Ok(PathBuf::from(runtime).join("tollgate"));
    }
    let run_user = PathBuf::from(format!("/run/user/{uid}"));
    if run_user.is_dir() {
        return Ok(run_user.join("tollgate"));
    }
    // A shared temporary directory: the folder must be ours and closed to others, or another
    // user could hold or swap our lock files.
    let fallback = std::env::temp_dir().join(format!("tollgate-{uid}"));
    let result = std::fs::DirBuilder::new().mode_0700().create(&fallback);
    if let Err(error) = result {
        if error.kind() != io::ErrorKind::AlreadyExists {
            return Err(io_error(
                "cannot create the lock directory",
                &fallback,
                error,
            ));
        }
    }
    let metadata = std::fs::symlink_metadata(&fallback)
        .map_err(|error| io_error("cannot inspect the lock directory", &fallback, error))?;
    if !metadata.is_dir() || metadata.uid() != uid || metadata.mode() & 0o022 != 0 {
        return Err(Error::invalid(format!(
            "{} is not a directory owned by uid {uid} and closed to others; \
             set XDG_RUNTIME_DIR or name a lock directory",
            fallback.display()
        )));
    }
    Ok(fallback)
}

trait DirBuilderExt {
    fn mode_0700(self) -> Self;
}

impl DirBuilderExt for std::fs::DirBuilder {
    fn mode_0700(mut self) -> Self {
        use std::os::unix::fs::DirBuilderExt as _;
        self.mode(0o700);
        self
    }
}

impl Config {
    fn create_directories(&self) -> Result<()> {
        use std::os::unix::fs::DirBuilderExt as _;
        for directory in [
            self.directory.clone(),
            self.directory.join("semaphore"),
            self.directory.join("rw"),
        ] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(self.directory_mode)
                .create(&directory)
                .map_err(|error| io_error("cannot create the lock directory", &directory, error))?;
        }
        Ok(())
    }

    fn open(&self, path: &Path) -> Result<File> {
        let opened = match sys::open_lock_file(path, self.file_mode) {
            // The directory was removed under us: make it again, once.
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                self.create_directories()?;
                sys::open_lock_file(path, self.file_mode)
            }
            other => other,
        };
        let file = opened.map_err(|error| io_error("cannot open lock file", path, error))?;
        if self.file_mode & 0o070 != 0 {
            // The umask may have taken the group bits away; put them back.
            use std::os::unix::fs::PermissionsExt;
            let metadata = file
                .metadata()
                .map_err(|error| io_error("cannot inspect", path, error))?;
            if metadata.permissions().mode() & 0o060 != 0o060 {
                // Only the owner may chmod; for anyone else the owner already chose.
                let _ = file.set_permissions(std::fs::Permissions::from_mode(self.file_mode));
            }
        }
        Ok(file)
    }

    fn path(&self, kind: Kind, name: &str) -> PathBuf {
        let file_name = name::file_name(name);
        match kind {
            Kind::Lock => self.directory.join(file_name),
            Kind::Semaphore => self.directory.join("semaphore").join(file_name),
            Kind::ReadWrite => self.directory.join("rw").join(file_name),
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Lock,
    Semaphore,
    ReadWrite,
}

impl LocalProvider {
    /// A provider on the per-user runtime directory.
    pub fn new() -> Result<Self> {
        Self::builder().build()
    }

    /// A provider whose lock files live in `directory`.
    pub fn with_directory(directory: impl Into<PathBuf>) -> Result<Self> {
        Self::builder().directory(directory).build()
    }

    /// Configures a provider.
    pub fn builder() -> LocalProviderBuilder {
        LocalProviderBuilder::default()
    }

    /// A provider from a URL: `local:` (per-user runtime directory), `file:///some/dir`, or
    /// either with `?group=true` for group access.
    pub fn from_url(url: &str) -> Result<Self> {
        let parsed = url::Url::parse(url)
            .map_err(|error| Error::invalid(format!("bad local backend URL {url:?}: {error}")))?;
        let mut builder = Self::builder();
        let mut options = UrlOptions::new("local", parsed.query().unwrap_or(""))?;
        if let Some(group) = options.flag("group")? {
            builder = builder.group_access(group);
        }
        options.finish(&[])?;
        match parsed.scheme() {
            "local" => {
                if !parsed.path().is_empty() {
                    return Err(Error::invalid(format!(
                        "{url:?}: `local:` takes no path; use file:///dir for a directory"
                    )));
                }
            }
            "file" => {
                if parsed
                    .host_str()
                    .is_some_and(|host| !host.is_empty() && host != "localhost")
                {
                    return Err(Error::invalid(format!(
                        "{url:?}: file URLs must be on this machine"
                    )));
                }
                let directory = parsed
                    .to_file_path()
                    .map_err(|()| Error::invalid(format!("{url:?} is not a directory path")))?;
                builder = builder.directory(directory);
            }
            other => {
                return Err(Error::invalid(format!(
                    "{url:?}: scheme {other:?} is not the local backend"
                )))
            }
        }
        builder.build()
    }

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

/// How every local primitive waits: run `attempt`, and while it reports "busy", sleep until
/// the lock file reports a change (or a re-check is due, or the wait ends), then run it again
/// (the shared wait loop). `Ok(false)` when the wait ran out.
async fn wait_for(
    path: &Path,
    wait: Wait,
    attempt: impl FnMut() -> Result<bool> + Send,
) -> Result<bool> {
    let mut contender = FileWaits { path, attempt };
    Ok(
        kit::wait::wait_for(&mut contender, wait.deadline(), &mut Rechecks::default())
            .await?
            .is_some(),
    )
}

/// A wait on a lock file, as the shared wait loop runs it.
struct FileWaits<'a, A> {
    path: &'a Path,
    attempt: A,
}

impl<A: FnMut() -> Result<bool> + Send> Contender for FileWaits<'_, A> {
    type Held = ();
    type Wake = watch::Registration;

    async fn attempt(&mut self) -> Result<Attempt<()>> {
        Ok(if (self.attempt)()? {
            Attempt::Taken(())
        } else {
            Attempt::Busy { retry_within: None }
        })
    }

    async fn subscribe(
        &mut self,
        _deadline: Option<tokio::time::Instant>,
    ) -> Option<watch::Registration> {
        match watch::register(self.path) {
            Ok(registration) => Some(registration),
            Err(error) => {
                tracing::warn!(
                    path = %self.path.display(), %error,
                    "cannot watch lock file; falling back to re-checking"
                );
                None
            }
        }
    }
}

/// When a waiter re-checks its lock file: quietly once a second while watching, on the settle
/// schedule after a change (a release can show as several events), and on the settle schedule
/// as a capped backoff without inotify.
#[derive(Default)]
struct Rechecks {
    settle: usize,
}

impl Schedule for Rechecks {
    fn pause(&mut self, watching: bool) -> Duration {
        let (pause, next) = match (watching, self.settle) {
            (true, 0) => (QUIET_RECHECK, 0),
            (true, n) if n < SETTLE_RECHECKS.len() => (SETTLE_RECHECKS[n - 1], n + 1),
            (true, n) => (SETTLE_RECHECKS[n - 1], 0),
            (false, n) => (SETTLE_RECHECKS[n.min(SETTLE_RECHECKS.len() - 1)], n + 1),
        };
        self.settle = next;
        pause
    }

    fn woken(&mut self) {
        self.settle = 1;
    }
}

impl Named {
    /// Acquires with `step`, which advances the attempt on the open lock file and reports
    /// whether it is complete; the file and the state stay across tries (a waiting writer
    /// keeps its place).
    async fn acquire<S: Default + Send>(
        &self,
        wait: Wait,
        mut step: impl FnMut(&File, &mut S) -> io::Result<bool> + Send,
    ) -> Result<Option<(HeldFile, S)>> {
        let mut attempt: Option<(HeldFile, S)> = None;
        let mut done = None;
        wait_for(&self.path, wait, || {
            done = self.try_step(&mut attempt, &mut step)?;
            Ok(done.is_some())
        })
        .await?;
        Ok(done)
    }

    fn try_step<S: Default>(
        &self,
        attempt: &mut Option<(HeldFile, S)>,
        step: &mut impl FnMut(&File, &mut S) -> io::Result<bool>,
    ) -> Result<Option<(HeldFile, S)>> {
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
            let complete = step(&held.file, state)
                .map_err(|error| io_error("cannot lock", &self.path, error))?;
            if !complete {
                return Ok(None);
            }
            let current = sys::is_linked(&held.file)
                .map_err(|error| io_error("cannot inspect", &self.path, error))?;
            if current {
                return Ok(attempt.take());
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
            .acquire(wait, |file, ()| sys::try_flock_exclusive(file))
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

/// A same-machine counting semaphore: ticket `i` is an exclusive lock on byte `i` of the
/// semaphore's file. Processes that name the same semaphore with different max counts share
/// the tickets they have in common, and each keeps to its own ceiling.
#[derive(Clone, Debug)]
pub struct LocalSemaphore {
    named: Arc<Named>,
    max_count: u32,
}

impl Acquire for LocalSemaphore {
    type Handle = LocalHandle;

    fn name(&self) -> &str {
        &self.named.name
    }

    /// Takes a ticket, waiting as `wait` says.
    ///
    /// # Cancel safety
    /// Cancel-safe: a dropped future closes its file, so no ticket stays taken.
    async fn acquire_wait(&self, wait: Wait) -> Result<Option<LocalHandle>> {
        let max_count = u64::from(self.max_count);
        let taken = self
            .named
            .acquire(wait, |file, (): &mut ()| {
                // Tickets are taken lowest-first, so a scan stops after the held ones.
                for ticket in 0..max_count {
                    if sys::try_range(file, Range::Exclusive, ticket, 1)? {
                        return Ok(true);
                    }
                }
                Ok(false)
            })
            .await?;
        Ok(taken.map(|(held, ())| LocalHandle {
            named: self.named.clone(),
            held,
            fencing: None,
        }))
    }
}

impl Semaphore for LocalSemaphore {
    fn max_count(&self) -> u32 {
        self.max_count
    }
}

impl LockProvider for LocalProvider {
    type Lock = LocalLock;

    fn lock(&self, name: &str) -> Result<LocalLock> {
        Ok(LocalLock {
            named: self.primitive(Kind::Lock, name),
        })
    }
}

impl SemaphoreProvider for LocalProvider {
    type Semaphore = LocalSemaphore;

    fn semaphore(&self, name: &str, max_count: u32) -> Result<LocalSemaphore> {
        check_max_count(name, max_count)?;
        Ok(LocalSemaphore {
            named: self.primitive(Kind::Semaphore, name),
            max_count,
        })
    }
}
